//! The OpenAPI description of the matchmaker- and operator-facing API, served at
//! `GET /openapi.json`.
//!
//! utoipa generates the schemas from the request and response types themselves, and the
//! statuses from the handlers' `#[utoipa::path]` attributes. [`document`] then states on
//! those schemas the rules the validators enforce beyond the types (lengths, patterns,
//! maxima, which states a selector takes, which operators take values, reserved keys),
//! taken from the validators' own constants and functions, so the description says what
//! the allocator accepts: `allocator/tests/openapi.rs` sends the same bodies to the
//! server and to the schema and fails when they disagree. Start with [`document`], then
//! `property_rules`.

use gaia_api::allocation::{ErrorBody, ID_PATTERN, MAX_BATCH, MAX_DEADLINE_MS, MAX_ID_LEN, MAX_LIST_LEN, Operator};
use gaia_api::fleet::{MAX_NAME_LEN, NAME_PATTERN};
use gaia_api::gameserver::{GameServerState, MAX_KEY_LEN, RESERVED_KEY_DOMAINS};
use serde_json::{Value, json};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Gaia Fleet allocator",
        description = "Allocations for matchmakers: a world slot on a ready game server, in the preferred \
            region, with an address and a join token; and for operators, the fleet (its servers, their live \
            changes as Server-Sent Events, the autoscaler's decisions) and draining a server. See \
            docs/architecture.md.\n\n\
            Integer fields take JSON integers only: `2`, not `2.0` or `2e0` (JSON Schema's `integer` \
            admits those; this server answers 400). Unknown fields are refused (400), as are the values \
            the schemas exclude. Every error has the `ErrorBody` shape."
    ),
    paths(
        crate::allocate::allocate,
        crate::allocate::batch,
        crate::spectate::spectate,
        crate::messages::messages,
        crate::autoscaler_status,
        crate::list_servers,
        crate::get_server,
        crate::drain,
        crate::events::events
    ),
    components(responses(Unauthorized)),
    modifiers(&BearerAuth),
)]
struct ApiDoc;

/// Missing or wrong bearer token (only when this server has matchmaker tokens).
#[derive(utoipa::ToResponse)]
#[response(headers(("WWW-Authenticate" = String, description = "`Bearer`")))]
#[allow(dead_code)] // only its description is used
pub(crate) struct Unauthorized(ErrorBody);

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("matchmaker", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
        let mut sdk = Http::new(HttpAuthScheme::Bearer);
        sdk.description = Some("A game server's own SDK token (`GAIA_SDK_TOKEN`), for its own record".into());
        components.add_security_scheme("sdk", SecurityScheme::Http(sdk));
    }
}

/// The document an allocator serves. `matchmaker_tokens`: whether this allocator has
/// matchmaker tokens; without, the matchmaker endpoints are open and the document says so
/// (no security requirement, no 401 or 403).
pub fn document(matchmaker_tokens: bool) -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    apply_rules(&mut doc);
    for (path, limit) in [("/v1/allocations", crate::MAX_BODY), ("/v1/allocations:batch", crate::MAX_BATCH_BODY)] {
        let pointer = format!("/paths/{}/post/responses/413/description", path.replace('/', "~1"));
        if let Some(description) = doc.pointer_mut(&pointer) {
            *description = format!("`too_large`: a body over {}", size(limit)).into();
        }
    }
    if !matchmaker_tokens {
        open(&mut doc);
    }
    doc
}

/// Request schemas' properties and the validators' rules for them, as JSON merge patches
/// (RFC 7396: `null` removes a keyword). `(schema, property, patch)`.
fn property_rules() -> Vec<(&'static str, &'static str, Value)> {
    let name = name_schema();
    let id = id_schema();
    let list = json!({"maxItems": MAX_LIST_LEN});
    let key = json!({"minLength": 1, "maxLength": MAX_KEY_LEN});
    let settable_key = json!({"minLength": 1, "maxLength": MAX_KEY_LEN, "not": {"pattern": reserved_key_pattern()}});
    let map = |keys: &Value| json!({"maxProperties": MAX_LIST_LEN, "propertyNames": keys});
    // A u32: utoipa says `format: int32`, whose range stops at 2^31 - 1.
    let u32_range = |minimum: u32| json!({"format": null, "minimum": minimum, "maximum": u32::MAX});
    vec![
        ("AllocationRequest", "fleet", name.clone()),
        ("AllocationRequest", "worldId", id.clone()),
        ("AllocationRequest", "playerId", id.clone()),
        ("AllocationRequest", "idempotencyKey", id),
        ("AllocationRequest", "regions", json!({"maxItems": MAX_LIST_LEN, "uniqueItems": true, "items": name})),
        ("AllocationRequest", "selectors", list.clone()),
        ("AllocationRequest", "priorities", list.clone()),
        ("AllocationRequest", "deadlineMs", json!({"maximum": MAX_DEADLINE_MS})),
        ("Selector", "matchLabels", map(&key)),
        ("Selector", "matchExpressions", list.clone()),
        ("Selector", "minFreeWorlds", u32_range(1)),
        ("Selector", "minFreePlayers", u32_range(0)),
        ("LabelExpression", "key", key),
        ("LabelExpression", "values", list),
        ("AllocationMetadata", "labels", map(&settable_key)),
        ("AllocationMetadata", "annotations", map(&settable_key)),
        ("BatchAllocationRequest", "requests", json!({"maxItems": MAX_BATCH})),
    ]
}

/// Path and query parameters that are names (fleets, servers).
const NAME_PARAMETERS: [&str; 2] = ["fleet", "name"];

/// What a path or query parameter accepts, by its name.
fn parameter_schema(name: &str) -> Option<Value> {
    match name {
        _ if NAME_PARAMETERS.contains(&name) => Some(name_schema()),
        "worldId" => Some(id_schema()),
        // A page's `next`: epoch.tick.seq.
        "before" => Some(json!({"pattern": "^[0-9]{1,20}\\.[0-9]{1,20}\\.[0-9]{1,10}$"})),
        "limit" => Some(json!({"minimum": 1, "maximum": gaia_checkpoint::MAX_PAGE})),
        _ => None,
    }
}

/// What `gaia_api::allocation::check_id` accepts.
fn id_schema() -> Value {
    json!({"minLength": 1, "maxLength": MAX_ID_LEN, "pattern": ID_PATTERN})
}

/// What `gaia_api::fleet::check_name` accepts.
fn name_schema() -> Value {
    json!({"minLength": 1, "maxLength": MAX_NAME_LEN, "pattern": NAME_PATTERN})
}

/// Keys under a [reserved domain](RESERVED_KEY_DOMAINS) or a subdomain of one, as
/// `check_settable_key` refuses them: the part before the first `/`, compared ignoring
/// ASCII case (ECMA-262 patterns have no flags, hence `[gG]`).
fn reserved_key_pattern() -> String {
    let domains: Vec<String> = RESERVED_KEY_DOMAINS
        .iter()
        .map(|domain| {
            domain
                .chars()
                .map(|c| match c {
                    c if c.is_ascii_alphabetic() => format!("[{}{}]", c.to_ascii_lowercase(), c.to_ascii_uppercase()),
                    c if c.is_ascii_alphanumeric() || c == '-' => c.to_string(),
                    c => format!("\\{c}"),
                })
                .collect()
        })
        .collect();
    format!("^(?:[^/]*\\.)?(?:{})/", domains.join("|"))
}

/// Applies every rule; returns the places it found no schema to apply a rule to (a
/// renamed type or field), which a test keeps empty.
fn apply_rules(doc: &mut Value) -> Vec<String> {
    let mut missed = Vec::new();
    for (schema, property, patch) in property_rules() {
        match doc.pointer_mut(&format!("/components/schemas/{schema}/properties/{property}")) {
            Some(target) => merge(target, patch),
            None => missed.push(format!("{schema}.{property}")),
        }
    }
    if !allocatable_states(doc) {
        missed.push("Selector.gameServerState".into());
    }
    if !label_expression_variants(doc) {
        missed.push("LabelExpression".into());
    }
    for_each_operation(doc, |path, operation| {
        let Some(parameters) = operation.get_mut("parameters").and_then(Value::as_array_mut) else { return };
        for parameter in parameters {
            let name = parameter["name"].as_str().unwrap_or_default().to_string();
            match parameter_schema(&name) {
                Some(schema) => merge(&mut parameter["schema"], schema),
                None => missed.push(format!("{path} parameter {name:?}")),
            }
        }
    });
    missed
}

/// A selector's `gameServerState` takes the states allocations may land on
/// ([`GameServerState::is_allocatable`]), or null.
fn allocatable_states(doc: &mut Value) -> bool {
    let Some(target) = doc.pointer_mut("/components/schemas/Selector/properties/gameServerState") else {
        return false;
    };
    // utoipa puts the field's description on the `$ref` branch of its `oneOf`.
    let description = target["oneOf"]
        .as_array()
        .and_then(|branches| branches.iter().find_map(|b| b.get("description")))
        .cloned()
        .unwrap_or_default();
    let mut states: Vec<Value> =
        GameServerState::ALL.into_iter().filter(|s| s.is_allocatable()).map(|s| s.as_str().into()).collect();
    states.push(Value::Null);
    *target = json!({"type": ["string", "null"], "enum": states, "description": description});
    true
}

/// A label expression is one of two shapes: an operator that takes values (at least one)
/// or one that takes none ([`Operator::takes_values`]).
fn label_expression_variants(doc: &mut Value) -> bool {
    let Some(schema) = doc.pointer_mut("/components/schemas/LabelExpression") else {
        return false;
    };
    let base = schema.take();
    let variant = |takes_values: bool| {
        let operators: Vec<Value> = Operator::ALL
            .into_iter()
            .filter(|o| o.takes_values() == takes_values)
            .filter_map(|o| serde_json::to_value(o).ok())
            .collect();
        let values = if takes_values { json!({"minItems": 1}) } else { json!({"maxItems": 0}) };
        let mut variant = base.clone();
        merge(
            &mut variant,
            json!({
                "description": null,
                "properties": {"operator": {"$ref": null, "type": "string", "enum": operators}, "values": values},
            }),
        );
        if takes_values && let Some(required) = variant["required"].as_array_mut() {
            required.push("values".into());
        }
        variant
    };
    *schema = json!({"description": base["description"], "oneOf": [variant(true), variant(false)]});
    true
}

/// Without matchmaker tokens nothing documented here asks for a token.
fn open(doc: &mut Value) {
    for_each_operation(doc, |_, operation| {
        if let Some(operation) = operation.as_object_mut() {
            operation.remove("security");
            if let Some(responses) = operation.get_mut("responses").and_then(Value::as_object_mut) {
                responses.remove("401");
                responses.remove("403");
            }
        }
    });
    if let Some(description) = doc.pointer_mut("/info/description") {
        let text = format!(
            "{}\n\nThis allocator has no matchmaker token: its endpoints are open.",
            description.as_str().unwrap_or_default()
        );
        *description = text.into();
    }
}

/// `64 KiB`, `2 MiB`.
fn size(bytes: usize) -> String {
    match bytes {
        b if b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} bytes"),
    }
}

fn for_each_operation(doc: &mut Value, mut f: impl FnMut(&str, &mut Value)) {
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else { return };
    for (path, item) in paths {
        let Some(methods) = item.as_object_mut() else { continue };
        for operation in methods.values_mut() {
            f(path, operation);
        }
    }
}

/// RFC 7396 JSON merge patch: objects merge key by key, `null` removes a key, anything
/// else replaces.
fn merge(target: &mut Value, patch: Value) {
    let Value::Object(patch) = patch else {
        *target = patch;
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    if let Value::Object(target) = target {
        for (key, value) in patch {
            if value.is_null() {
                target.remove(&key);
            } else {
                merge(target.entry(key).or_insert(Value::Null), value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rule_finds_its_schema() {
        let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
        assert_eq!(apply_rules(&mut doc), Vec::<String>::new());
    }

    #[test]
    fn sizes() {
        assert_eq!([size(64 << 10), size(2 << 20), size(100)], ["64 KiB", "2 MiB", "100 bytes"]);
    }

    #[test]
    fn merge_patches() {
        let mut v = json!({"a": 1, "b": {"c": 2, "d": 3}});
        merge(&mut v, json!({"a": null, "b": {"c": 4}, "e": [null]}));
        assert_eq!(v, json!({"b": {"c": 4, "d": 3}, "e": [null]}));
    }

    #[test]
    fn the_reserved_key_pattern_is_case_blind() {
        assert_eq!(
            reserved_key_pattern(),
            r"^(?:[^/]*\.)?(?:[gG][aA][iI][aA]\.[dD][eE][vV]|[aA][gG][oO][nN][eE][sS]\.[dD][eE][vV])/"
        );
    }
}
