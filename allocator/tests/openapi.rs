//! The OpenAPI document (`GET /openapi.json`) says what the allocator does: the same bodies
//! go to the server (through `router()`) and to the document's own schema, and the two must
//! agree on which are bad requests, rule by rule and for generated mixes of them; every
//! documented endpoint lists every status it can answer. The one rule JSON Schema cannot
//! state (integer literals only: `2.0` is refused) is said in words, and checked here.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;

use axum::http::{Method, StatusCode};
use gaia_allocator::Config;
use gaia_api::allocation::{
    AllocationRequest, MAX_BATCH, MAX_DEADLINE_MS, MAX_ID_LEN, MAX_LIST_LEN, Operator, Selector,
};
use gaia_api::fleet::MAX_NAME_LEN;
use gaia_api::gameserver::{GameServerState, MAX_KEY_LEN};
use serde_json::{Value, json};

use common::{App, SECRET, call, error};

const TOKEN: &str = "matchmaker-token";

async fn document(app: &App) -> Value {
    let (status, doc) = call(&app.router, Method::GET, "/openapi.json", "").await;
    assert_eq!(status, StatusCode::OK);
    doc
}

/// A validator for one of the document's component schemas.
fn validator(doc: &Value, schema: &str) -> jsonschema::Validator {
    let root = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$ref": format!("#/components/schemas/{schema}"),
        "components": doc["components"],
    });
    jsonschema::draft202012::new(&root).unwrap_or_else(|e| panic!("{schema} is not a valid schema: {e}"))
}

/// The allocator and the document's schemas, side by side.
struct Both {
    app: App,
    request: jsonschema::Validator,
    batch: jsonschema::Validator,
}

impl Both {
    async fn new() -> Self {
        let app = App::new();
        // The fleet's regions, so a valid request's regions are ones the fleet has.
        app.ready("s1", "eu", 1000).await;
        app.ready("s2", "us", 1000).await;
        let doc = document(&app).await;
        Self { request: validator(&doc, "AllocationRequest"), batch: validator(&doc, "BatchAllocationRequest"), app }
    }

    /// Panics unless the schema and the server agree on `body`, alone and in a batch.
    async fn agree(&self, body: &Value) {
        let (status, v) = call(&self.app.router, Method::POST, "/v1/allocations", &body.to_string()).await;
        let server_ok = status != StatusCode::BAD_REQUEST;
        let why = self.request.validate(body).err().map(|e| e.to_string());
        assert_eq!(why.is_none(), server_ok, "{body}\n  schema: {why:?}\n  server: {status} {v}");
        let batch = json!({ "requests": [body] });
        let (status, v) = call(&self.app.router, Method::POST, "/v1/allocations:batch", &batch.to_string()).await;
        assert_eq!(status, StatusCode::OK, "{batch}: {v}");
        let item_ok = v["results"][0]["status"] != 400;
        assert_eq!(self.batch.is_valid(&batch), item_ok, "{batch}: {v}");
    }
}

fn request(fields: Value) -> Value {
    let mut body = json!({"fleet": "town"});
    body.as_object_mut().unwrap().extend(fields.as_object().unwrap().clone());
    body
}

fn selector(fields: Value) -> Value {
    request(json!({ "selectors": [fields] }))
}

fn expression(key: &str, operator: &str, values: &[&str]) -> Value {
    selector(json!({"matchExpressions": [{"key": key, "operator": operator, "values": values}]}))
}

fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("k{i}")).collect()
}

fn map(n: usize) -> Value {
    names(n).into_iter().map(|k| (k, json!("v"))).collect::<serde_json::Map<_, _>>().into()
}

/// Bodies on both sides of every rule the validators enforce.
fn rule_cases() -> Vec<Value> {
    let long = |n: usize| "a".repeat(n);
    let mut cases = vec![
        // Names: fleet and regions.
        json!({"fleet": "town"}),
        json!({"fleet": long(MAX_NAME_LEN)}),
        json!({"fleet": long(MAX_NAME_LEN + 1)}),
        json!({"fleet": ""}),
        json!({"fleet": "Town"}),
        json!({"fleet": "to_wn"}),
        json!({"fleet": "town\n"}),
        json!({"fleet": 7}),
        json!({}),
        request(json!({"regions": ["eu", "us"]})),
        request(json!({"regions": ["eu", "eu"]})),
        request(json!({"regions": ["EU"]})),
        request(json!({"regions": [""]})),
        request(json!({ "regions": names(MAX_LIST_LEN + 1) })),
        request(json!({"regions": "eu"})),
        request(json!({"regions": null})),
        // Strategy, priorities.
        request(json!({"strategy": "Distributed"})),
        request(json!({"strategy": "Random"})),
        request(json!({ "priorities": vec![json!({"key": "worlds"}); MAX_LIST_LEN] })),
        request(json!({ "priorities": vec![json!({"key": "players"}); MAX_LIST_LEN + 1] })),
        request(json!({"priorities": [{"key": "cpu"}]})),
        request(json!({"priorities": [{"key": "worlds", "order": "Descending"}]})),
        request(json!({"priorities": [{"key": "worlds", "order": "Up"}]})),
        // Deadline.
        request(json!({ "deadlineMs": MAX_DEADLINE_MS })),
        request(json!({ "deadlineMs": MAX_DEADLINE_MS + 1 })),
        request(json!({"deadlineMs": 0})),
        request(json!({"deadlineMs": -1})),
        request(json!({"deadlineMs": null})),
        request(json!({"deadlineMs": "5"})),
        // Selectors.
        request(json!({ "selectors": vec![json!({}); MAX_LIST_LEN] })),
        request(json!({ "selectors": vec![json!({}); MAX_LIST_LEN + 1] })),
        selector(json!({"gameServerState": null})),
        selector(json!({"gameServerState": "ready"})),
        selector(json!({"minFreeWorlds": 0})),
        selector(json!({"minFreeWorlds": 1})),
        selector(json!({ "minFreeWorlds": u32::MAX })),
        selector(json!({ "minFreeWorlds": u64::from(u32::MAX) + 1 })),
        selector(json!({"minFreeWorlds": -1})),
        selector(json!({"minFreeWorlds": 1.5})),
        selector(json!({"minFreePlayers": 0})),
        selector(json!({ "minFreePlayers": u64::from(u32::MAX) + 1 })),
        selector(json!({"minFreePlayers": null})),
        selector(json!({ "matchLabels": map(MAX_LIST_LEN) })),
        selector(json!({ "matchLabels": map(MAX_LIST_LEN + 1) })),
        selector(json!({"matchLabels": {"": "x"}})),
        selector(json!({ "matchLabels": {long(MAX_KEY_LEN): "x"} })),
        selector(json!({ "matchLabels": {long(MAX_KEY_LEN + 1): "x"} })),
        // Lengths are characters, as JSON Schema counts them, not bytes.
        selector(json!({ "matchLabels": {"é".repeat(MAX_KEY_LEN): "x"} })),
        // Selectors may match the system's own labels.
        selector(json!({"matchLabels": {"gaia.dev/template": "x"}})),
        selector(json!({"matchLabels": {"mode": 1}})),
        selector(json!({"zone": "a"})),
        selector(json!({ "matchExpressions": vec![json!({"key": "k", "operator": "Exists"}); MAX_LIST_LEN] })),
        selector(json!({ "matchExpressions": vec![json!({"key": "k", "operator": "Exists"}); MAX_LIST_LEN + 1] })),
        expression("", "Exists", &[]),
        expression(&long(MAX_KEY_LEN + 1), "Exists", &[]),
        expression("k", "Near", &["x"]),
        selector(json!({"matchExpressions": [{"key": "k", "operator": "In", "values": ["x"], "extra": 1}]})),
        selector(json!({"matchExpressions": [{"key": "k", "operator": "Exists"}]})),
        selector(json!({"matchExpressions": [{"key": "k", "operator": "In"}]})),
        selector(json!({"matchExpressions": [{"operator": "Exists"}]})),
        // Metadata.
        request(json!({ "metadata": {"labels": map(MAX_LIST_LEN), "annotations": map(MAX_LIST_LEN)} })),
        request(json!({ "metadata": {"labels": map(MAX_LIST_LEN + 1)} })),
        request(json!({ "metadata": {"annotations": map(MAX_LIST_LEN + 1)} })),
        request(json!({ "metadata": {"annotations": {long(MAX_KEY_LEN + 1): "x"}} })),
        request(json!({"metadata": {"labels": {"": "x"}}})),
        request(json!({"metadata": {"tags": {}}})),
        request(json!({"metadata": null})),
        // Unknown fields, wrong shapes.
        request(json!({"region": "eu"})),
        json!("town"),
        json!(["town"]),
        json!(null),
    ];
    for field in ["worldId", "playerId", "idempotencyKey"] {
        for id in [json!("w-1.a:b_C"), json!(long(MAX_ID_LEN)), json!(null)] {
            cases.push(request(json!({ field: id })));
        }
        for id in [json!(""), json!(long(MAX_ID_LEN + 1)), json!("a b"), json!("é"), json!("w/1"), json!(1)] {
            cases.push(request(json!({ field: id })));
        }
    }
    for state in GameServerState::ALL {
        cases.push(selector(json!({"gameServerState": state})));
    }
    for operator in Operator::ALL {
        let name = serde_json::to_value(operator).unwrap();
        let name = name.as_str().unwrap();
        cases.push(expression("k", name, &[]));
        cases.push(expression("k", name, &["x"]));
        let values = names(MAX_LIST_LEN);
        cases.push(expression("k", name, &values.iter().map(String::as_str).collect::<Vec<_>>()));
        let values = names(MAX_LIST_LEN + 1);
        cases.push(expression("k", name, &values.iter().map(String::as_str).collect::<Vec<_>>()));
    }
    for key in [
        "gaia.dev/template",
        "GAIA.Dev/fleet",
        "x.gaia.dev/a",
        "agones.dev/sdk-x",
        "a.b.AGONES.dev/c",
        "mode",
        "example.com/gaia.dev",
        "notgaia.dev/x",
        "gaia.dev",
        "gaia.devx/y",
        "x/gaia.dev/y",
    ] {
        for map in ["labels", "annotations"] {
            cases.push(request(json!({"metadata": { map: {key: "v"} }})));
        }
    }
    cases
}

#[tokio::test(start_paused = true)]
async fn the_schema_refuses_what_the_server_refuses() {
    let both = Both::new().await;
    for body in rule_cases() {
        both.agree(&body).await;
    }
}

/// JSON Schema's `integer` admits `2.0` and `2e0`; the allocator takes integer literals
/// only. The document says so in words, and the server keeps to it.
#[tokio::test]
async fn integer_fields_take_integer_literals_only() {
    let both = Both::new().await;
    let doc = document(&both.app).await;
    let description = doc["info"]["description"].as_str().unwrap();
    assert!(description.contains("JSON integers only: `2`, not `2.0` or `2e0`"), "{description}");
    for body in [
        r#"{"fleet":"town","deadlineMs":2.0}"#,
        r#"{"fleet":"town","deadlineMs":2e0}"#,
        r#"{"fleet":"town","selectors":[{"minFreeWorlds":1.0}]}"#,
    ] {
        let (status, v) = call(&both.app.router, Method::POST, "/v1/allocations", body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {v}");
        assert!(both.request.is_valid(&serde_json::from_str(body).unwrap()), "{body}: JSON Schema admits it");
    }
}

mod generated {
    use proptest::prelude::*;

    use super::*;

    /// One field: mostly unset or valid, sometimes on the wrong side of a rule, so that
    /// many bodies are valid and each invalid one is invalid for few reasons.
    fn field(valid: Vec<Value>, invalid: Vec<Value>) -> BoxedStrategy<Option<Value>> {
        prop_oneof![
            3 => Just(None),
            6 => prop::sample::select(valid).prop_map(Some),
            1 => prop::sample::select(invalid).prop_map(Some),
        ]
        .boxed()
    }

    fn list(item: BoxedStrategy<Value>) -> BoxedStrategy<Option<Value>> {
        prop::option::of(prop::collection::vec(item, 0..3).prop_map(Value::from)).boxed()
    }

    fn object(fields: Vec<(&'static str, BoxedStrategy<Option<Value>>)>) -> BoxedStrategy<Value> {
        let (names, values): (Vec<_>, Vec<_>) = fields.into_iter().unzip();
        values
            .prop_map(move |values| {
                let fields = names.iter().zip(values).filter_map(|(name, v)| Some((name.to_string(), v?)));
                Value::Object(fields.collect())
            })
            .boxed()
    }

    fn expression() -> BoxedStrategy<Value> {
        let operators = Operator::ALL.iter().map(|o| json!(o)).collect();
        object(vec![
            ("key", field(vec![json!("mode")], vec![json!(""), json!("k".repeat(MAX_KEY_LEN + 1))])),
            ("operator", field(operators, vec![json!("in")])),
            (
                "values",
                field(vec![json!([]), json!(["ranked", "casual"])], vec![json!(names(MAX_LIST_LEN + 1)), json!([1])]),
            ),
        ])
    }

    fn selector() -> BoxedStrategy<Value> {
        let states = GameServerState::ALL.iter().map(|s| json!(s)).chain([Value::Null]).collect();
        object(vec![
            (
                "matchLabels",
                field(vec![json!({"mode": "ranked"}), json!({})], vec![json!({"": "x"}), map(MAX_LIST_LEN + 1)]),
            ),
            ("matchExpressions", list(expression())),
            ("gameServerState", field(states, vec![json!("ready")])),
            ("minFreeWorlds", field(vec![json!(1), json!(u32::MAX)], vec![json!(0), json!(u64::from(u32::MAX) + 1)])),
            ("minFreePlayers", field(vec![json!(0), json!(null)], vec![json!(-1)])),
        ])
    }

    fn body() -> BoxedStrategy<Value> {
        let fleet = prop_oneof![9 => Just(Some(json!("town"))), 1 => field(vec![json!("other")], vec![json!(""), json!("Town")])];
        object(vec![
            ("fleet", fleet.boxed()),
            (
                "worldId",
                field(
                    vec![json!("w-1"), json!(null)],
                    vec![json!(""), json!("a b"), json!("w".repeat(MAX_ID_LEN + 1))],
                ),
            ),
            ("playerId", field(vec![json!("p-1")], vec![json!(1)])),
            (
                "regions",
                field(vec![json!(["eu"]), json!(["us", "eu"]), json!([])], vec![json!(["eu", "eu"]), json!(["EU"])]),
            ),
            ("selectors", list(selector())),
            ("strategy", field(vec![json!("Packed"), json!("Distributed")], vec![json!("packed")])),
            (
                "priorities",
                field(vec![json!([{"key": "players", "order": "Descending"}])], vec![json!([{"key": "x"}])]),
            ),
            (
                "metadata",
                field(
                    vec![json!({"labels": {"match": "m1"}}), json!({"annotations": {"example.com/gaia.dev": "y"}})],
                    vec![
                        json!({"labels": {"gaia.dev/template": "x"}}),
                        json!({"annotations": {"a.AGONES.dev/x": "y"}}),
                    ],
                ),
            ),
            ("idempotencyKey", field(vec![json!("m-1")], vec![json!("")])),
            ("deadlineMs", field(vec![json!(0), json!(MAX_DEADLINE_MS)], vec![json!(MAX_DEADLINE_MS + 1)])),
            ("extra", prop_oneof![19 => Just(None), 1 => Just(Some(json!(1)))].boxed()),
        ])
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
        #[test]
        fn the_schema_and_the_server_agree(body in body()) {
            let runtime =
                tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
            runtime.block_on(async {
                let both = Both::new().await;
                both.agree(&body).await;
            });
        }
    }
}

/// `(method, path)` and every status it can answer when matchmakers need a token.
fn statuses() -> Vec<(&'static str, &'static str, Vec<&'static str>)> {
    vec![
        ("post", "/v1/allocations", vec!["200", "400", "401", "404", "413", "429", "503"]),
        ("post", "/v1/allocations:batch", vec!["200", "400", "401", "413"]),
        ("get", "/v1/gameservers", vec!["200", "400", "401", "503"]),
        ("get", "/v1/gameservers/{name}", vec!["200", "400", "401", "403", "404", "503"]),
        ("get", "/v1/fleets/{fleet}/autoscaler", vec!["200", "400", "401", "404"]),
        ("post", "/v1/gameservers/{name}/drain", vec!["200", "400", "401", "403", "404", "409", "503"]),
        ("get", "/v1/events", vec!["200", "401", "503"]),
        ("post", "/v1/fleets/{fleet}/worlds/{worldId}/spectate", vec!["200", "400", "401", "404", "503"]),
        ("get", "/v1/worlds/{worldId}/messages", vec!["200", "400", "401", "404", "503"]),
    ]
}

fn with_token() -> App {
    App::with_config(Config { join_secret: SECRET.into(), matchmaker_tokens: vec![TOKEN.into()], ..Default::default() })
}

#[tokio::test]
async fn every_endpoint_lists_every_status_it_answers() {
    let doc = document(&with_token()).await;
    let described: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| item.as_object().unwrap().keys().map(|m| (m.clone(), path.clone())))
        .collect();
    let expected: BTreeSet<(String, String)> =
        statuses().iter().map(|(m, p, _)| (m.to_string(), p.to_string())).collect();
    assert_eq!(described, expected);
    for (method, path, want) in statuses() {
        let operation = &doc["paths"][path][method];
        let got: Vec<&str> = operation["responses"].as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(got, want, "{method} {path}");
        for (status, response) in operation["responses"].as_object().unwrap() {
            if status.starts_with('2') {
                continue;
            }
            let error_body = json!({"$ref": "#/components/schemas/ErrorBody"});
            let response = match response["$ref"].as_str() {
                Some(reference) => &doc["components"]["responses"][reference.rsplit('/').next().unwrap()],
                None => response,
            };
            assert_eq!(response["content"]["application/json"]["schema"], error_body, "{method} {path} {status}");
            if status == "401" {
                assert!(response["headers"]["WWW-Authenticate"].is_object(), "{method} {path}");
            }
        }
        assert_eq!(operation["security"][0], json!({"matchmaker": []}), "{method} {path}");
    }
    assert_eq!(doc["paths"]["/v1/gameservers/{name}"]["get"]["security"][1], json!({"sdk": []}));
    assert_eq!(doc["paths"]["/v1/gameservers/{name}/drain"]["post"]["security"][1], json!({"sdk": []}));
    assert_eq!(doc["components"]["securitySchemes"]["matchmaker"]["scheme"], "bearer");
}

/// Without matchmaker tokens the endpoints are open, and the document does not ask for one.
#[tokio::test]
async fn an_open_allocator_documents_no_token() {
    let doc = document(&App::new()).await;
    for (method, path, want) in statuses() {
        let operation = &doc["paths"][path][method];
        assert!(operation.get("security").is_none(), "{method} {path}");
        let got: Vec<&str> = operation["responses"].as_object().unwrap().keys().map(String::as_str).collect();
        let want: Vec<&str> = want.into_iter().filter(|s| !["401", "403"].contains(s)).collect();
        assert_eq!(got, want, "{method} {path}");
    }
}

/// What a 401 and the other errors of the GET endpoints look like: the error body, as
/// documented, never axum's plain-text rejections.
#[tokio::test]
async fn the_get_endpoints_answer_their_documented_errors() {
    let app = with_token();
    let authorized = |uri: &str| {
        let req = axum::http::Request::builder()
            .uri(uri)
            .header("authorization", format!("Bearer {TOKEN}"))
            .body(axum::body::Body::empty())
            .unwrap();
        let router = app.router.clone();
        async move {
            use tower::ServiceExt;
            let resp = router.oneshot(req).await.unwrap();
            let status = resp.status();
            let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
            (status, serde_json::from_slice::<Value>(&bytes).unwrap_or_else(|e| panic!("not JSON ({e}): {bytes:?}")))
        }
    };
    let doc = document(&app).await;
    for (path, parameter) in
        [("/v1/gameservers/{name}", "name"), ("/v1/fleets/{fleet}/autoscaler", "fleet"), ("/v1/gameservers", "fleet")]
    {
        let operation = &doc["paths"][path]["get"];
        let (status, v) = call(&app.router, Method::GET, &path.replace(&format!("{{{parameter}}}"), "x"), "").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}: {v}");
        assert_eq!(error(&v).error.code, "unauthorized");

        let schema = operation["parameters"][0]["schema"].clone();
        let schema = jsonschema::draft202012::new(&schema).unwrap();
        for (value, encoded) in [
            ("town", "town"),
            ("", ""),
            (&*"a".repeat(MAX_NAME_LEN + 1), &*"a".repeat(MAX_NAME_LEN + 1)),
            ("Town", "Town"),
            ("a b", "a%20b"),
        ] {
            let uri = match path {
                "/v1/gameservers" => format!("/v1/gameservers?fleet={encoded}"),
                _ if value.is_empty() => continue, // an empty segment is another route
                _ => path.replace(&format!("{{{parameter}}}"), encoded),
            };
            let (status, v) = authorized(&uri).await;
            let valid = schema.is_valid(&json!(value));
            assert_eq!(status == StatusCode::BAD_REQUEST, !valid, "{uri}: {status} {v}");
            if !valid {
                assert_eq!(error(&v).error.field.as_deref(), Some(parameter), "{uri}: {v}");
            }
        }
    }
    // Not UTF-8, or the parameter twice: still the error body.
    for uri in ["/v1/gameservers/%FF", "/v1/fleets/%FF/autoscaler", "/v1/gameservers?fleet=a&fleet=b"] {
        let (status, v) = authorized(uri).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {v}");
        assert_eq!(error(&v).error.code, "bad_request", "{uri}");
    }
}

/// Every field the allocator reads is in the schema, and nothing else; every list has a
/// documented maximum.
#[tokio::test]
async fn the_schemas_match_the_types() {
    let doc = document(&App::new()).await;
    let schemas = &doc["components"]["schemas"];
    for (name, example) in [
        ("AllocationRequest", serde_json::to_value(AllocationRequest::default()).unwrap()),
        ("Selector", serde_json::to_value(Selector::default()).unwrap()),
    ] {
        let mut described: Vec<&String> = schemas[name]["properties"].as_object().unwrap().keys().collect();
        let mut fields: Vec<&String> = example.as_object().unwrap().keys().collect();
        described.sort();
        fields.sort();
        assert_eq!(described, fields, "{name}");
        assert_eq!(schemas[name]["additionalProperties"], false, "{name}");
    }
    assert_eq!(schemas["BatchAllocationRequest"]["properties"]["requests"]["maxItems"], MAX_BATCH);
    assert_eq!(schemas["BatchAllocationRequest"]["additionalProperties"], false);
}
