//! The allocation contract between a matchmaker and the allocator.
//!
//! `POST /v1/allocations` takes an [`AllocationRequest`] and answers an
//! [`AllocationResponse`], or an [`ErrorBody`] with 400 (bad field), 404 (unknown
//! fleet) or 429 (no capacity). Moving a world off its server answers a
//! [`MoveResponse`]. See docs/architecture.md for the whole contract.
//!
//! The types also derive TypeScript declarations (clients/typescript/src/generated/, written
//! by api/tests/typescript.rs), for matchmakers written in TypeScript. A request field serde
//! fills in when it is missing is `#[ts(optional = nullable)]`: TypeScript may leave it out
//! (`?`), and it may be `null` only when the Rust type is an `Option`. A response field that
//! is skipped when `None` is `#[ts(optional)]`: present, or absent, never `null`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::fleet::SpecError;
use crate::gameserver::GameServerState;

/// Which server a new world goes to among the candidates that fit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema, ts_rs::TS)]
#[ts(export_to = "allocation.ts")]
pub enum Strategy {
    /// Fill the fullest server that still has room, so empty ones can be scaled down.
    #[default]
    Packed,
    /// Spread over the emptiest servers.
    Distributed,
}

/// A label requirement, as in Kubernetes' label selectors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema, ts_rs::TS)]
#[ts(export_to = "allocation.ts")]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelExpression {
    pub key: String,
    pub operator: Operator,
    /// The values for `In` and `NotIn` (at least one); empty for `Exists` and `DoesNotExist`.
    #[serde(default)]
    #[ts(optional = nullable)]
    pub values: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema, ts_rs::TS)]
#[ts(export_to = "allocation.ts")]
pub enum Operator {
    /// The label is set to one of the values.
    In,
    /// The label is unset or set to none of the values.
    NotIn,
    /// The label is set, to anything.
    Exists,
    /// The label is unset.
    DoesNotExist,
}

impl Operator {
    pub const ALL: [Operator; 4] = [Self::In, Self::NotIn, Self::Exists, Self::DoesNotExist];

    /// Whether an expression with this operator takes values (at least one), or none.
    pub fn takes_values(self) -> bool {
        matches!(self, Self::In | Self::NotIn)
    }
}

impl LabelExpression {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match self.operator {
            Operator::In => value.is_some_and(|v| self.values.contains(v)),
            Operator::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }
}

/// Narrows the candidate servers. Selectors are tried in order; the first that matches
/// any server wins (Agones' semantics).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema, ts_rs::TS)]
#[ts(export_to = "allocation.ts")]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Selector {
    /// Every pair must be among the server's labels.
    #[serde(default)]
    #[ts(optional = nullable)]
    pub match_labels: BTreeMap<String, String>,
    /// Every expression must hold for the server's labels.
    #[serde(default)]
    #[ts(optional = nullable)]
    pub match_expressions: Vec<LabelExpression>,
    /// Only servers in this state (Ready or Allocated); any allocatable state when unset.
    #[serde(default)]
    #[ts(optional = nullable)]
    pub game_server_state: Option<GameServerState>,
    /// Only servers with at least this many free world slots (1 when unset).
    #[serde(default)]
    #[ts(optional = nullable)]
    pub min_free_worlds: Option<u32>,
    /// Only servers with at least this many free player slots.
    #[serde(default)]
    #[ts(optional = nullable)]
    pub min_free_players: Option<u32>,
}

impl Selector {
    /// Whether `labels` satisfy the label part of this selector.
    pub fn matches_labels(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|e| e.matches(labels))
    }
}

/// A server count that orders candidates (Agones' Counter priorities, over the two
/// counters every server has).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema, ts_rs::TS)]
#[ts(export_to = "allocation.ts")]
#[serde(rename_all = "camelCase")]
pub enum PriorityKey {
    /// World slots in use.
    Worlds,
    /// Connected players.
    Players,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema, ts_rs::TS)]
#[ts(export_to = "allocation.ts")]
pub enum Order {
    #[default]
    Ascending,
    Descending,
}

/// Orders the servers that match a selector. Packed: breaks ties among the fullest
/// servers. Distributed: orders all of them (then emptiest first). See `choose` in the
/// registry crate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema, ts_rs::TS)]
#[ts(export_to = "allocation.ts")]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Priority {
    pub key: PriorityKey,
    #[serde(default)]
    #[ts(optional = nullable)]
    pub order: Order,
}

/// Set on the chosen server at allocation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema, ts_rs::TS)]
#[ts(export_to = "allocation.ts")]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AllocationMetadata {
    #[serde(default)]
    #[ts(optional = nullable)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    #[ts(optional = nullable)]
    pub annotations: BTreeMap<String, String>,
}

impl AllocationMetadata {
    /// Each map's length, and every key is one an allocation may set (none under the
    /// system's domains: [`crate::gameserver::check_settable_key`]).
    pub fn validate(&self) -> Result<(), SpecError> {
        for (field, map) in [("metadata.labels", &self.labels), ("metadata.annotations", &self.annotations)] {
            check_len(field, map.len())?;
            for key in map.keys() {
                crate::gameserver::check_settable_key(field, key)?;
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema, ts_rs::TS)]
#[ts(export_to = "allocation.ts")]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AllocationRequest {
    pub fleet: String,
    /// Join this world: where it lives if a server holds it, else a new slot for it.
    #[serde(default)]
    #[ts(optional = nullable)]
    pub world_id: Option<String>,
    /// Who will join; put into the join token. Generated when unset.
    #[serde(default)]
    #[ts(optional = nullable)]
    pub player_id: Option<String>,
    /// Preferred regions, best first. Empty: any region of the fleet.
    #[serde(default)]
    #[ts(optional = nullable)]
    pub regions: Vec<String>,
    #[serde(default)]
    #[ts(optional = nullable)]
    pub selectors: Vec<Selector>,
    #[serde(default)]
    #[ts(optional = nullable)]
    pub strategy: Strategy,
    #[serde(default)]
    #[ts(optional = nullable)]
    pub priorities: Vec<Priority>,
    #[serde(default)]
    #[ts(optional = nullable)]
    pub metadata: AllocationMetadata,
    /// Repeating a request with the same key while its lease lives returns the same answer.
    #[serde(default)]
    #[ts(optional = nullable)]
    pub idempotency_key: Option<String>,
    /// How long the caller will wait for capacity, in milliseconds, at most one minute
    /// (`MAX_DEADLINE_MS`). With no free slot the allocator waits (for the autoscaler to
    /// add servers, or a lease to expire) until then, and answers 429 after. Unset or 0:
    /// answer at once.
    #[serde(default)]
    #[ts(optional = nullable)]
    pub deadline_ms: Option<u64>,
}

/// Longest id (world, player, idempotency key) the API accepts.
pub const MAX_ID_LEN: usize = 128;

/// An id's characters as a JSON Schema (ECMA-262) pattern, for the OpenAPI document; its
/// length is 1 to [`MAX_ID_LEN`].
pub const ID_PATTERN: &str = "^[A-Za-z0-9._:-]+$";

/// Longest wait for capacity a request may ask for.
pub const MAX_DEADLINE_MS: u64 = 60_000;

/// Most selectors, expressions per selector, values per expression, priorities and
/// metadata entries a request may carry: enough for any matchmaker, small enough that
/// one request cannot make the allocator scan for long.
pub const MAX_LIST_LEN: usize = 16;

/// Most requests in one batch.
pub const MAX_BATCH: usize = 1000;

/// Checks an id (world, player, idempotency key) as the API accepts it; the error names
/// `field`.
pub fn check_id(field: &str, id: &str) -> Result<(), SpecError> {
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
        check_len("regions", self.regions.len())?;
        check_len("selectors", self.selectors.len())?;
        for (i, selector) in self.selectors.iter().enumerate() {
            selector.validate(&format!("selectors[{i}]"))?;
        }
        check_len("priorities", self.priorities.len())?;
        self.metadata.validate()?;
        if let Some(deadline) = self.deadline_ms
            && deadline > MAX_DEADLINE_MS
        {
            return Err(SpecError {
                field: "deadlineMs".into(),
                message: format!("must be at most {MAX_DEADLINE_MS} (one minute), not {deadline}"),
            });
        }
        Ok(())
    }
}

impl Selector {
    fn validate(&self, field: &str) -> Result<(), SpecError> {
        if let Some(state) = self.game_server_state
            && !state.is_allocatable()
        {
            return Err(SpecError {
                field: format!("{field}.gameServerState"),
                message: format!("must be Ready or Allocated, not {state}"),
            });
        }
        check_len(&format!("{field}.matchLabels"), self.match_labels.len())?;
        check_keys(&format!("{field}.matchLabels"), self.match_labels.keys())?;
        check_len(&format!("{field}.matchExpressions"), self.match_expressions.len())?;
        for (j, e) in self.match_expressions.iter().enumerate() {
            let field = format!("{field}.matchExpressions[{j}]");
            check_keys(&format!("{field}.key"), [&e.key])?;
            check_len(&format!("{field}.values"), e.values.len())?;
            let needs_values = e.operator.takes_values();
            if needs_values == e.values.is_empty() {
                let message = if needs_values {
                    format!("operator {:?} needs at least one value", e.operator)
                } else {
                    format!("operator {:?} takes no values", e.operator)
                };
                return Err(SpecError { field: format!("{field}.values"), message });
            }
        }
        if self.min_free_worlds == Some(0) {
            return Err(SpecError {
                field: format!("{field}.minFreeWorlds"),
                message: "must be at least 1: a new world takes a slot".into(),
            });
        }
        Ok(())
    }
}

fn check_len(field: &str, len: usize) -> Result<(), SpecError> {
    if len > MAX_LIST_LEN {
        return Err(SpecError { field: field.into(), message: format!("at most {MAX_LIST_LEN} entries, not {len}") });
    }
    Ok(())
}

fn check_keys<'a>(field: &str, keys: impl IntoIterator<Item = &'a String>) -> Result<(), SpecError> {
    use crate::gameserver::{MAX_KEY_LEN, is_key_len};
    for key in keys {
        if !is_key_len(key) {
            return Err(SpecError {
                field: field.into(),
                message: format!("keys must be 1 to {MAX_KEY_LEN} characters"),
            });
        }
    }
    Ok(())
}

/// A slot held for a world until its first player joins or the lease expires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema, ts_rs::TS)]
#[ts(export_to = "allocation.ts")]
#[serde(rename_all = "camelCase")]
pub struct Lease {
    pub id: String,
    /// Unix time in milliseconds.
    pub expires_at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema, ts_rs::TS)]
#[ts(export_to = "allocation.ts")]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema, ts_rs::TS)]
#[ts(export_to = "allocation.ts")]
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

/// Answer to `POST /v1/fleets/{fleet}/worlds/{worldId}/spectate`: a read-only seat in a
/// running world. Connect to `address` and send `Join{token}` as with a join token: the
/// connection gets the world's Welcome (`you` 0) and its deltas, takes no player slot, and
/// each of its inputs is refused (`spectators cannot act`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema, ts_rs::TS)]
#[ts(export_to = "allocation.ts")]
#[serde(rename_all = "camelCase")]
pub struct SpectateResponse {
    pub world_id: String,
    pub fleet: String,
    pub server: String,
    pub region: String,
    /// WebSocket address to connect to.
    pub address: String,
    /// A spectate token: present with `Join{token}` as the first frame.
    pub token: String,
    /// Unix time in milliseconds after which the server refuses the token.
    pub expires_at_ms: u64,
}

/// `POST /v1/allocations:batch`: a matchmaker's whole cycle in one call. The requests are
/// answered in order, each on its own (one failing does not fail the rest).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema, ts_rs::TS)]
#[ts(export_to = "allocation.ts")]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BatchAllocationRequest {
    pub requests: Vec<AllocationRequest>,
}

/// One answer per request, in the same order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema, ts_rs::TS)]
#[ts(export_to = "allocation.ts")]
#[serde(rename_all = "camelCase")]
pub struct BatchAllocationResponse {
    pub results: Vec<BatchResult>,
}

/// Either the allocation or the error the single endpoint would have answered, with its
/// HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema, ts_rs::TS)]
#[ts(export_to = "allocation.ts")]
#[serde(rename_all = "camelCase")]
pub struct BatchResult {
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[ts(optional)]
    pub allocation: Option<AllocationResponse>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[ts(optional)]
    pub error: Option<ErrorDetail>,
}

/// Every error the HTTP APIs return has this shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema, ts_rs::TS)]
#[ts(export_to = "allocation.ts")]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema, ts_rs::TS)]
#[ts(export_to = "allocation.ts")]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `bad_request`, `no_capacity`.
    pub code: String,
    pub message: String,
    /// The request field at fault, for 400s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[ts(optional)]
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
            (r#"{"fleet":"town","metadata":{"annotations":{"":"x"}}}"#, "metadata.annotations"),
            (r#"{"fleet":"town","metadata":{"labels":{"gaia.dev/template":"x"}}}"#, "metadata.labels"),
            (r#"{"fleet":"town","metadata":{"annotations":{"agones.dev/sdk-x":"x"}}}"#, "metadata.annotations"),
            (
                r#"{"fleet":"town","selectors":[{"matchExpressions":[{"key":"m","operator":"In"}]}]}"#,
                "selectors[0].matchExpressions[0].values",
            ),
            (
                r#"{"fleet":"town","selectors":[{"matchExpressions":[{"key":"m","operator":"Exists","values":["x"]}]}]}"#,
                "selectors[0].matchExpressions[0].values",
            ),
            (
                r#"{"fleet":"town","selectors":[{"matchExpressions":[{"key":"","operator":"Exists"}]}]}"#,
                "selectors[0].matchExpressions[0].key",
            ),
            (r#"{"fleet":"town","selectors":[{"minFreeWorlds":0}]}"#, "selectors[0].minFreeWorlds"),
            (r#"{"fleet":"town","deadlineMs":60001}"#, "deadlineMs"),
        ];
        for (json, field) in cases {
            assert_eq!(request(json).validate().unwrap_err().field, field, "{json}");
        }
        let long = format!(r#"{{"fleet":"town","idempotencyKey":"{}"}}"#, "k".repeat(MAX_ID_LEN + 1));
        assert_eq!(request(&long).validate().unwrap_err().field, "idempotencyKey");
    }

    #[test]
    fn label_expressions() {
        let labels = BTreeMap::from([("mode".to_string(), "ranked".to_string())]);
        let e = |key: &str, operator, values: &[&str]| LabelExpression {
            key: key.into(),
            operator,
            values: values.iter().map(|v| v.to_string()).collect(),
        };
        use Operator::*;
        let cases = [
            (e("mode", In, &["ranked", "casual"]), true),
            (e("mode", In, &["casual"]), false),
            (e("map", In, &["ranked"]), false),
            (e("mode", NotIn, &["casual"]), true),
            (e("mode", NotIn, &["ranked"]), false),
            (e("map", NotIn, &["x"]), true),
            (e("mode", Exists, &[]), true),
            (e("map", Exists, &[]), false),
            (e("mode", DoesNotExist, &[]), false),
            (e("map", DoesNotExist, &[]), true),
        ];
        for (expr, want) in cases {
            assert_eq!(expr.matches(&labels), want, "{expr:?}");
        }
    }

    #[test]
    fn negative_and_huge_numbers_name_the_field() {
        for json in [r#"{"fleet":"town","selectors":[{"minFreePlayers":-1}]}"#, r#"{"fleet":"town","deadlineMs":-5}"#] {
            let de = &mut serde_json::Deserializer::from_str(json);
            let err = serde_path_to_error::deserialize::<_, AllocationRequest>(de).unwrap_err();
            assert!(err.to_string().contains("invalid value"), "{err}");
            assert_ne!(err.path().to_string(), ".");
        }
    }

    #[test]
    fn unknown_fields_are_rejected() {
        assert!(serde_json::from_str::<AllocationRequest>(r#"{"fleet":"town","region":"eu"}"#).is_err());
    }
}
